"""HTTP routers: thin handlers over the plain functions in `service.allocation`."""
