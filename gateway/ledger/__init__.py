"""The usage ledger: one record per finished request, written durably, exported per tenant and time range."""
