from lockgate._entry import main

raise SystemExit(main())
