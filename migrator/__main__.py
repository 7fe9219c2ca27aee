from migrator.fast import main

raise SystemExit(main())
