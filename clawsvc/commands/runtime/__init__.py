"""The gateway's runtime on disk: Node and openclaw provisioned from the npm registry, versions side by side
behind a stable `current` link."""
