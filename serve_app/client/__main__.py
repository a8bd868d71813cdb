import sys

from serve_app.client.cli import main

sys.exit(main())
