import martinet


@martinet.task("alpha")
def alpha(task):
    return "alpha"
