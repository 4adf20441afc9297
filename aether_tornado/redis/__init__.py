"""Redis as every backend reaches it: RESP connections, a cluster's topology, and the link's state."""
