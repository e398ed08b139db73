"""fedtrain's Flower ClientApp."""
