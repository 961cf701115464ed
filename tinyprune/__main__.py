from tinyprune.cli import main

raise SystemExit(main())
