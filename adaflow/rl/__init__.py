"""adaflow.rl: REINFORCE for the AdaDiff step selector (`reinforce`) and its rewards (`rewards`)."""
