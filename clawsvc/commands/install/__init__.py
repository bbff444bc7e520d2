"""Setting clawsvc up as a service (system units, instances, --user, --launchd) and taking it down again."""
