"""Reading runs back: the results table, the teacher-quality ladder, the analysis figures and the teacher geometry."""
