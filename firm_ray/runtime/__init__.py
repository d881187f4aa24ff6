"""The only package that imports Ray: client worker actors, the aggregator actor, the round loop."""
