# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the pip bootstrap script that ansible-test downloads from its CI file host.

ansible-test creates each sanity-test virtual environment without pip, then runs a cached
``get_pip_<version>.py`` as ``python get_pip.py --disable-pip-version-check pip==X ...
--no-setuptools --no-wheel``. That host is not reachable from our machines (only the package
registries are), so scripts/sanity.sh puts this file in ansible-test's cache instead. It does
the same job with what is here: the interpreter's bundled pip (ensurepip, no network) installs
the exact packages ansible-test asked for from the package index.
"""

import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel", "--no-pip"}

# In a child process: ensurepip.bootstrap() sets PIP_CONFIG_FILE=/dev/null in the process that
# calls it, which would hide the site's pip configuration (index, certificates) from the
# install below.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + args))
