"""Policies: techniques from related work as named, parameterised strategies, one registry per family
(cmtwin/policy/registry.py); their presets live in policies/<family>/<name>.yaml."""
