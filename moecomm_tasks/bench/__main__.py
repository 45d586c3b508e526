import sys

from moecomm_tasks.bench.main import main

sys.exit(main())
