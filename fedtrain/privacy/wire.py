"""Names of the DP fields a client's train reply carries and the server's restore entry.

They live in ``privacy/`` (not ``federation/``) because the ledger that reads them must not
depend on the federation layer. Kebab-case, as Flower's wire keys.
"""

PARTITION_ID = "partition-id"
DP_DECLINED = "dp-declined"  # 1 when the budget guard refused the round
DP_EPSILON = "dp-epsilon"  # the client's own figure; the server recomputes it from the history
DP_SIGMA = "dp-sigma"
DP_SAMPLE_RATE = "dp-q"
DP_STEPS = "dp-steps"
USER_DP_WEIGHT = "dp-weight"  # equal weights, required by Flower's user-level DP accounting

# The evidence a reply must carry to count as private under sample-level DP.
DP_EVIDENCE = (DP_DECLINED, DP_EPSILON, DP_SIGMA, DP_SAMPLE_RATE, DP_STEPS)

# A ConfigRecord in the train reply: the client's whole accountant history (ClientAccountant.state_dict()).
DP_HISTORY = "dp-history"
# Train config on resume: one JSON history per partition id ("" = none), for clients that lost Context.state.
RESTORE_HISTORY = "dp-restore-history"
