"""Stand-in for the pip bootstrap script that ansible-test downloads from its own file host.

That host is not reachable from machines of this project (package registries only), so
scripts/setup places this file where ansible-test caches the script. It does the same job:
give the new virtual environment pip (ensurepip, from the standard library), then install the
requested pip version and packages from the package registry with the arguments given.
"""
import ensurepip
import os
import subprocess
import sys

# get-pip's own switches (what not to install besides pip) mean nothing to pip install.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
env = dict(os.environ)  # ensurepip switches pip's configuration off in os.environ; keep ours
ensurepip.bootstrap(upgrade=True)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + args, env=env))
