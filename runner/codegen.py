class CodeGenerator: pass
