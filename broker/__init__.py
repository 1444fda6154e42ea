"""The broker role: the hub process, its refresh state machine, negatives versions and refresh stats."""
