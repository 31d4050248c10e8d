"""p2p.export."""
