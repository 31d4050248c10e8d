"""p2p.runtime."""
