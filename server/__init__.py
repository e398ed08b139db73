"""fedtrain's Flower ServerApp."""
