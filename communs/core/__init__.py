"""Core: settings, database, tenancy, accounts, events, jobs, addresses, web shell."""
