"""``python -m igc_np.data``: the old command, now ``python -m igc_np.app.datasets``."""
import sys

from ..app.datasets import main

sys.argv[0] = "python -m igc_np.data"  # what --help shows as the program
raise SystemExit(main())
