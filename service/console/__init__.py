"""The operator console: a browser page served by the service and the read-only JSON it is drawn from.

`curve` computes the what-if budget curve (expected revenue, spend, λ and treatment mix for any budget) from
the solver's cached exact λ sweep; `static/` holds the page itself (plain HTML, JS and SVG: no build step, no
third-party code). Setting a budget goes through the existing admin route `POST /budget`.

Writes no Redis keys: everything here reads the loaded model, the λ table and the metrics registry.
"""
