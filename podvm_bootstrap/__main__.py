from podvm_bootstrap.cli.main import main

raise SystemExit(main())
