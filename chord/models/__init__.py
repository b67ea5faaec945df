"""Sequential recommendation backbones (SASRec, Caser) behind one interface."""
