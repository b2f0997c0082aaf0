// PolicyTests: placeholder so the package loads; replace with real tests.
