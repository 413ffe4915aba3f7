"""Discrete-event serving simulation: event engine, entities, metrics."""
