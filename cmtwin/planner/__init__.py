"""Deployment -> Plan: roles, ranks, expert placement and per-die memory."""
