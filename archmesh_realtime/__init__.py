"""The composition root: the `archmesh-rt` command line and the one-process development mode.

Everything else is imported from here, never the other way round: the gateway and the notifier
below, what they share (`shared`) at the bottom (tests/test_architecture.py holds the order)."""
