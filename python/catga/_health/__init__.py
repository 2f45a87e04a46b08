"""The implementation of `catga.health`: reports, the registry, the built-in checks.

Split by concern: `_report` (statuses and results), `_running` (running checks concurrently under
a deadline), `_registry` (`HealthRegistry`), `_builtins` (the checks a mediator gets). The public
names live in `catga.health`.
"""
