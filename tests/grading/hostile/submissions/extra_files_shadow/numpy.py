raise ImportError('student numpy')
