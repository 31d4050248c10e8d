"""p2p.cli."""
