"""``python -m igc_np.imagenet``: the old command, now ``python -m igc_np.app.imagenet``."""
import sys

from ..app.imagenet import main

sys.argv[0] = "python -m igc_np.imagenet"  # what --help shows as the program
raise SystemExit(main())
