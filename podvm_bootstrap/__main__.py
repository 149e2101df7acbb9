from podvm_bootstrap.cli import main

raise SystemExit(main())
