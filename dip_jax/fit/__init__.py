"""What a fit computes: `config` (FitConfig), `step` (the core step), `transforms`
(each DIP feature as an init/update pair), `objective` (data term + regularisers),
`optim` (the built-in optimisers), `problem` (the static half and its compiled
programs), `checks` (what `prepare` checks first), `result` (`FitResult`) and
`api` (`prepare`, `run`, `readout`, `fit`)."""
