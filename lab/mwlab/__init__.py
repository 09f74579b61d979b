"""mwlab: multi-ISP lab in network namespaces for multiwan.linux.

    from mwlab import Lab, Topology
    lab = Lab("mwa")
    lab.up("lab/topologies/two-sites.yml")
    lab.fail("s1", "isp1", "blackhole"); lab.restore("s1", "isp1")
    lab.down()
"""

from .lab import FAIL_MODES, Lab, lab_name
from .netns import LabError
from .topology import Topology, TopologyError

__all__ = ["Lab", "Topology", "LabError", "TopologyError", "FAIL_MODES", "lab_name"]
