package lookup

// ProblemType says what kind of problem a reference has, so that validation
// can report it as the matching field error.
type ProblemType int

// The kinds of problem a reference can have.
const (
	// Invalid: the referenced object exists but is not what is needed.
	Invalid ProblemType = iota
	// NotFound: nothing of that name exists.
	NotFound
	// LookupFailed: the lookup itself failed; nothing is known of the object.
	LookupFailed
)

// Problem is why a reference cannot be used, in words for a person.
type Problem struct {
	Type ProblemType
	// Value is the reference as written, such as a Secret's name.
	Value   string
	Message string
}

func (p *Problem) Error() string { return p.Message }
