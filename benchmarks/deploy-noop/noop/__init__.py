"""A no-op Message-API Flower app: what a Deployment Engine round costs with no work in it."""
