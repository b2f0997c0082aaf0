// The one type JWTVerifier.swift needs from Policy's Decision.swift (whose own dependencies
// would pull in half the module): the fuzz build compiles Policy/JWT alone.
public enum DenialCode { case expired, invalidToken }
