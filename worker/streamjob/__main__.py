from streamjob.cli import main

raise SystemExit(main())
