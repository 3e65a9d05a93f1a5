from autovae.cli import main

raise SystemExit(main())
