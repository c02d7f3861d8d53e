"""pvebalance: keeps the guests of a Proxmox VE cluster evenly spread over its nodes."""

__version__ = "0.1.0"
