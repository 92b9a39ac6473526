import martinet


@martinet.task("beta")
def beta(task):
    return "beta"
