"""Drivers above the twin: `cmtwin validate`'s checks against every published figure (checks.py) and the
layout studies (studies.py). They run the twin and the planner; nothing below imports them."""
