"""p2p.trainer."""
