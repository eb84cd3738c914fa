"""Flow matching: interpolants, training-time distributions, ODE samplers."""
from adaflow.flow.interpolants import (CosineInterpolant, Interpolant, LinearInterpolant,
                                       log_snr_db, make_interpolant)
from adaflow.flow.samplers import guided, integrate, solver_options, time_grid
from adaflow.flow.partition import (EDGE_RULES, StepRun, TimePartition, edge_grid, joint_segments,
                                    refine_grid, snap_grid, step_runs)
from adaflow.flow.timesteps import sample_t, sample_t_in_range, t_cdf
