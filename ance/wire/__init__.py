"""The wire between broker and clients: every message (protocol), the socket policy (transport),
CURVE keys, and the client side both broker peers share (brokerlink).

May import: ance.run."""
