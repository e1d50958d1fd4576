"""The hub's benchmark: a harness (hub, relay, clients, legs, report) and a package of cases."""
