"""OPT checkpoint -> Top-dialect MLIR graphs -> BM1684X bmodel (work in progress: see README)."""
