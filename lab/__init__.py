"""The quorum.recovery lab: real etcd and dqlite clusters on network and mount namespaces."""
from .core import Host, Lab, LabError  # noqa: F401
