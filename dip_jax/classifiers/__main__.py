from dip_jax.classifiers.cli import main

raise SystemExit(main())
